from scfm.commands.cli import main

raise SystemExit(main())
