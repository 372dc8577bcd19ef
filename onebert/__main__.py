from onebert.cli.main import main

raise SystemExit(main())
