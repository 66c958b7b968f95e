"""Backbones, connector, prompts, late fusion and the NoteLLM-2 multimodal representation model."""
