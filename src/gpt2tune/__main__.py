import sys

from gpt2tune.cli.main import main

sys.exit(main())
