"""`python -m harness` is the same as the `skoracle` console script."""

try:
    from harness.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python is still importing the CLI
    import sys

    print("skoracle: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
