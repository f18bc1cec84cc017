"""Everything napari and Qt: reader, writer, sample data, dock widgets (thin over the core)."""
