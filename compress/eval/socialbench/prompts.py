"""SocialBench prompts, as the official `dataset.py` (`format_prompt`) builds them.

`template` (the default) is the official rule, by category:
- dialogue as "speaker: text" lines, options as "X. text" lines, both in file order;
- SA: the role's profile, the conversation, "you are playing {name}", choose the best option;
- DialogueEmotionDetect: the conversation, then a question quoting the last utterance;
- HumorSarcasmDetect and SituationUnderstanding: only the dialogue and the options, no instruction;
- MEM: the role's profile, the conversation and a request to reply once as the role;
- Group SAP: every role's profile (none skipped), each cut to its first 10 lines after runs of
  newlines are collapsed, joined by two blank lines, with "output only A, B, C or D";
- the item's `instruction` field is not used.

`instruction` puts the item's own `instruction` text where the template has its task sentence,
with the same context: `{profile}\n\n{dialogue}\n{instruction}\n{options}` (no profile for EP; every
role's shortened profile for SP; no options for MEM); an empty instruction leaves its line out, which
for HumorSarcasm and Situation items is exactly the template prompt. Which of the two prompt
sources produced the published table is not known.
"""

from __future__ import annotations

import re

from compress.eval.socialbench.data import Item

# The official templates, verbatim (their leading and trailing newlines included).
SA = {
    "en": "\n==Profile==\n{role_profile}\n\n==Conversations==\n{conversations}\n\nYou are playing the role of "
          "{role_name}, you need to embody the knowledge and style of {role_name}.\nBased on the provided role "
          "Profile and Conversations, please choose the best option (A, B, C, or D):\n{options}\n\nYour selection:\n",
    "zh": "\n==角色描述==\n{role_profile}\n\n==对话历史==\n{conversations}\n\n你要扮演{role_name}角色，你在聊天中要具备"
          "该角色对应的知识背景，语气风格等特征。\n请根据所给的{role_name}角色描述和对话历史，从下面四个选项（A. B. C.和D.）"
          "中选择符合{role_name}的选项：\n{options}\n\n你的选择：\n",
}
DIALOGUE_EMOTION = {
    "en": "\n==Conversations==\n{conversations}\n\nSelect the option () that best matches the mood in utterance "
          "\"{utterance}\". Single Choice\n{options}\n\nYour selection:\n",
    "zh": "\n==对话历史==\n{conversations}\n\n单选选择题，选择最符合\"{utterance}\"说话者当时心情的选项()\n{options}\n\n"
          "你的选择:\n",
}
OPEN = {
    "en": "\n==Profile==\n{role_profile}\n\n==Conversations==\n{conversations}\n\nYou are playing the role of "
          "{role_name}, you need to embody the knowledge and style of {role_name}.\nBased on the provided role "
          "Profile and Conversations, you must produce a reply as the Assistant to response to the latest User's "
          "message (one term is enough):\nAssistant: \n",
    "zh": "\n==角色描述==\n{role_profile}\n\n==对话历史==\n{conversations}\n\n你要扮演{role_name}角色，你在聊天中要具备"
          "该角色对应的知识背景，语气风格等特征。\n请根据所给的{role_name}角色描述和对话历史，根据最后一个User的对话再补充"
          "一轮你作为Assistant的回复（一轮就好）：\nAssistant: \n",
}
GROUP = {
    "en": "\n==Profiles==\n{role_profiles}\n\n==Conversations==\n{conversations}\n\nYou are playing the role of "
          "{role_name}, you need to embody the social preference of {role_name}.\nBased on the provided role profile "
          "and conversations, please choose the best option (A, B, C, or D) as your response:\n{options}\n\n"
          "Your selection (You can only output A, B, C or D, and no other characters.):\n",
    "zh": "\n==角色描述==\n{role_profiles}\n\n==对话历史==\n{conversations}\n\n你要扮演{role_name}角色，你在聊天中要具备"
          "该角色对应的社交偏好。\n请根据所给的{role_name}角色描述和对话历史，从下面四个选项（A. B. C.和D.）中选择最优的选项"
          "作为你的回复：\n{options}\n\n你的选择（你只能输出A，B，C或D，不要输出其他单词。）：\n",
}
GROUP_PROFILE_LINES = 10
INSTRUCTION_LAYOUT = "{profile}\\n\\n{dialogue}\\n{instruction}\\n{options}"


def conversation(item: Item) -> str:
    """Every utterance as 'speaker: text' on its own line."""
    return "".join(f"{who}: {text}\n" for who, text in item.dialogue)


def options(item: Item) -> str:
    return "".join(f"{k}. {v}\n" for k, v in item.choices)


def group_profiles(item: Item, lines: int = GROUP_PROFILE_LINES) -> str:
    """Each role's profile with runs of newlines collapsed, cut to its first `lines` lines; joined by two blank lines."""
    return "\n\n\n".join("\n".join(re.sub(r"\n+", "\n", text).split("\n")[:lines]) for _, text in item.profile)


def own_profile(item: Item) -> str:
    return dict(item.profile)[item.name]


def template_prompt(item: Item) -> str:
    conv = conversation(item)
    if item.kind == "mem":
        return OPEN[item.lang].format_map({"role_profile": own_profile(item), "conversations": conv,
                                           "role_name": item.name})
    if item.kind == "ep_emotion":
        return DIALOGUE_EMOTION[item.lang].format_map({"conversations": conv, "options": options(item),
                                                       "utterance": item.dialogue[-1][1]})
    if item.kind == "ep_plain":
        return f"{conv}\n{options(item)}"
    if item.kind == "sp":
        return GROUP[item.lang].format_map({"role_profiles": group_profiles(item), "conversations": conv,
                                            "role_name": item.name, "options": options(item)})
    return SA[item.lang].format_map({"role_profile": own_profile(item), "conversations": conv,
                                     "role_name": item.name, "options": options(item)})


def instruction_prompt(item: Item) -> str:
    profile = {"sa": own_profile, "mem": own_profile, "sp": group_profiles}.get(item.kind)
    head = f"{profile(item)}\n\n" if profile else ""
    line = f"{item.instruction}\n" if item.instruction.strip() else ""
    return f"{head}{conversation(item)}\n{line}{options(item)}"


def build_prompt(item: Item, source: str = "template") -> str:
    if source == "template":
        return template_prompt(item)
    if source == "instruction":
        return instruction_prompt(item)
    raise ValueError(f"unknown prompt source {source!r}")
