import sys

from napari_histattn.cli import main

sys.exit(main())
