import sys

from tera_proxy.cli import main

sys.exit(main())
