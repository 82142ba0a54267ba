from remembrall.cli import main

raise SystemExit(main())
