import sys

from ctrlgan.cli import main

sys.exit(main())
