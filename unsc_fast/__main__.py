import sys

try:
    from .cli import main
except KeyboardInterrupt:          # Ctrl-C while torch is still importing: one line, not a trace
    print("unsc-fast: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
