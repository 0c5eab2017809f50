"""Generation pipeline: LLM seed + NLI filter + augmentation, distilled into a Flan-T5 student."""
