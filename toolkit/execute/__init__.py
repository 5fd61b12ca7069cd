"""The execute stage: patching a pristine copy, the LLM implementer, and the pipeline that submits and collects."""
