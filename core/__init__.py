"""NoteLLM-2 workbench core: models, data, training, retrieval and analysis. Never imports gradio."""
