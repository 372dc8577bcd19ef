from onebert.cli import main

raise SystemExit(main())
