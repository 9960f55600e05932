# Rules of the export stage (see workflow/CONTRACTS.md); targets register in STAGE_TARGETS.
