"""``python -m risk_engine``: the ``risk-engine`` command."""

from risk_engine.cli import main

if __name__ == "__main__":
    main()
