"""CLI commands of the model layer."""
from __future__ import annotations

from core.cli import add_workspace_argument


def _provision(args) -> int:
    from core.models.provision import provision_all

    for name, path in provision_all().items():
        print(f"{name}\t{path}")
    return 0


def _describe(args) -> int:
    """Print the prompt a variant builds for a sample note: a quick way to see what the LLM reads."""
    from core.data.schema import Note
    from core.models.llm import load_llm
    from core.models.note_encoder import NoteEncoderConfig
    from core.models.prompts import PromptBuilder

    config = NoteEncoderConfig.for_variant(args.variant, llm=args.llm)
    config.prompt.language = args.language
    _, tokenizer = load_llm(config.llm)
    builder = PromptBuilder(tokenizer, config.prompt, config.image_mode, config.num_query_tokens)
    note = Note("example", title=args.title, content=args.content, image="example.png")
    prompt = builder.build(note)
    print(builder.render(prompt))
    print(f"\n{len(prompt.ids)} tokens ({config.num_query_tokens if config.image_mode != 'none' else 0} visual)")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("provision", help="prepare the offline backbones in the cache folder")
    add_workspace_argument(parser)
    parser.set_defaults(func=_provision)

    parser = subparsers.add_parser("prompt", help="show the prompt a variant builds for a note")
    parser.add_argument("--variant", default="micl+late")
    parser.add_argument("--llm", default="offline:smollm2-135m")
    parser.add_argument("--language", default="en", choices=["en", "zh"])
    parser.add_argument("--title", default="A red fox in the snow")
    parser.add_argument("--content", default="Clip art of a fox #animals#")
    add_workspace_argument(parser)
    parser.set_defaults(func=_describe)
