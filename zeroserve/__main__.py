import sys

from zeroserve.cli import main

sys.exit(main())
