# Rules of the merge stage (see workflow/CONTRACTS.md); targets register in STAGE_TARGETS.
