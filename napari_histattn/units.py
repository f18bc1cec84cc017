"""Physical units shared by the slide readers and the checkpoint checks (imports nothing)."""

from __future__ import annotations

#: Micrometres per pixel a microscope image can have: from 10 nm to 1 mm. A
#: resolution outside it is damaged or hostile metadata, not a measurement.
MPP_RANGE = (0.01, 1000.0)
