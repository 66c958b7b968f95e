"""The Gradio workbench: UI only; every computation is a call into core."""
