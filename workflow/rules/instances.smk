# Rules of the instances stage (see workflow/CONTRACTS.md); targets register in STAGE_TARGETS.
