import sys

from alignzoo.cli import main

sys.exit(main())
