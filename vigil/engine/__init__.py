"""The recovery engine: observe, decide (a pure function), act through drivers, record."""
