"""The compile stage: the plan, the accelerate/DeepSpeed configs, launch scripts and REVIEW.md in one build folder."""
