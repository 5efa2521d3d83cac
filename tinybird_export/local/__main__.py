"""``python -m tinybird_export.local``."""

import sys

from tinybird_export.local import main

sys.exit(main())
