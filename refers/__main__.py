import sys

from refers.cli.main import main

sys.exit(main())
