from scfm.cli import main

raise SystemExit(main())
