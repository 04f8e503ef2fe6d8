import sys

from .latency import main

sys.exit(main())
