import sys

from gpt2tune.cli import main

sys.exit(main())
