"""The feature store: sharded Zarr arrays plus a Parquet manifest."""
