import sys

from echoengine.cli import main

sys.exit(main())
