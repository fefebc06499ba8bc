"""The live dashboard of the loop (`feedloop dashboard`, the supervised service `dashboard`)."""
