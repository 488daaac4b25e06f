import sys

from launch.bench import main

sys.exit(main())
