import sys

from layoutpeft.cli import main

sys.exit(main())
