"""`python -m histoflow.manifest compare OLD NEW` (see histoflow.manifest.compare)."""

from histoflow.manifest.compare import main

raise SystemExit(main())
