import sys

from . import main

if __name__ == "__main__":  # importing this module (pkgutil walks every module) must not run the command line
    sys.exit(main())
