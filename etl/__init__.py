"""Pure ETL functions (decode, align, augment, source readers) and Spark glue."""
