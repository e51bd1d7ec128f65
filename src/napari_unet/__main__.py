"""``python -m napari_unet``: the command line."""

import sys

from napari_unet.cli.main import main

sys.exit(main())
