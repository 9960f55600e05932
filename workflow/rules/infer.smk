# Rules of the infer stage (see workflow/CONTRACTS.md); targets register in STAGE_TARGETS.
