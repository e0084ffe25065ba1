import sys

from marvit.cli import main

sys.exit(main())
