import sys

from histosic.cli import main

sys.exit(main())
