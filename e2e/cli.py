"""Entry point placeholder: this component is not built yet (see the project's issues)."""

import sys


def main() -> int:
    print("vmoverlay: the e2e component is not built yet in this checkout.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
