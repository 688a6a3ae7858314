from dae.cli import main

raise SystemExit(main())
