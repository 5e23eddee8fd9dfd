"""SocialBench test material: hand-written items of every category in the official schema (the three
data files not shipped in shared/data are built from it) and the official prompt rule of
`dataset.py` written out again here, independently of compress's code: the templates as the
official file lays them out (triple-quoted) and the category dispatch, option/dialogue layout and
group-profile shortening as its README and `format_prompt` describe them."""

from __future__ import annotations

import json
from pathlib import Path

SA_EN = """
==Profile==
{role_profile}

==Conversations==
{conversations}

You are playing the role of {role_name}, you need to embody the knowledge and style of {role_name}.
Based on the provided role Profile and Conversations, please choose the best option (A, B, C, or D):
{options}

Your selection:
"""
SA_ZH = """
==角色描述==
{role_profile}

==对话历史==
{conversations}

你要扮演{role_name}角色，你在聊天中要具备该角色对应的知识背景，语气风格等特征。
请根据所给的{role_name}角色描述和对话历史，从下面四个选项（A. B. C.和D.）中选择符合{role_name}的选项：
{options}

你的选择：
"""
EMO_EN = """
==Conversations==
{conversations}

Select the option () that best matches the mood in utterance "{utterance}". Single Choice
{options}

Your selection:
"""
EMO_ZH = """
==对话历史==
{conversations}

单选选择题，选择最符合"{utterance}"说话者当时心情的选项()
{options}

你的选择:
"""
OPEN_EN = """
==Profile==
{role_profile}

==Conversations==
{conversations}

You are playing the role of {role_name}, you need to embody the knowledge and style of {role_name}.
Based on the provided role Profile and Conversations, you must produce a reply as the Assistant to response to the latest User's message (one term is enough):
Assistant: 
"""  # noqa: W291 - the official template ends "Assistant: " with a space
OPEN_ZH = """
==角色描述==
{role_profile}

==对话历史==
{conversations}

你要扮演{role_name}角色，你在聊天中要具备该角色对应的知识背景，语气风格等特征。
请根据所给的{role_name}角色描述和对话历史，根据最后一个User的对话再补充一轮你作为Assistant的回复（一轮就好）：
Assistant: 
"""  # noqa: W291
GROUP_EN = """
==Profiles==
{role_profiles}

==Conversations==
{conversations}

You are playing the role of {role_name}, you need to embody the social preference of {role_name}.
Based on the provided role profile and conversations, please choose the best option (A, B, C, or D) as your response:
{options}

Your selection (You can only output A, B, C or D, and no other characters.):
"""
GROUP_ZH = """
==角色描述==
{role_profiles}

==对话历史==
{conversations}

你要扮演{role_name}角色，你在聊天中要具备该角色对应的社交偏好。
请根据所给的{role_name}角色描述和对话历史，从下面四个选项（A. B. C.和D.）中选择最优的选项作为你的回复：
{options}

你的选择（你只能输出A，B，C或D，不要输出其他单词。）：
"""


def reference_prompt(item: dict) -> str:
    """dataset.py's rule, from the schema: lines 'from: value', options 'K. text', by category."""
    conv = "".join("{}: {}\n".format(t["from"], t["value"]) for t in item["dialogue"])
    opts = "".join(f"{k}. {v}\n" for k, v in (item.get("choices") or {}).items())
    meta = item["meta"]
    en = meta["lang"].lower() == "en"
    cat = meta["category"]
    if cat.startswith("Individual-MEM"):
        t = OPEN_EN if en else OPEN_ZH
        return t.replace("{role_profile}", meta["profile"][meta["name"]]).replace("{conversations}", conv) \
                .replace("{role_name}", meta["name"])
    if cat == "Individual-EP-DialogueEmotionDetect":
        t = EMO_EN if en else EMO_ZH
        return t.replace("{conversations}", conv).replace("{options}", opts) \
                .replace("{utterance}", item["dialogue"][-1]["value"])
    if cat in ("Individual-EP-HumorSarcasmDetect", "Individual-EP-SituationUnderstanding"):
        return conv + "\n" + opts
    if cat.startswith("Group-SAP-"):
        profiles = []
        for text in meta["profile"].values():  # every role; blank lines dropped; first 10 lines
            parts = text.split("\n")
            kept = [p for i, p in enumerate(parts) if p != "" or i in (0, len(parts) - 1)]
            profiles.append("\n".join(kept[:10]))
        t = GROUP_EN if en else GROUP_ZH
        return t.replace("{role_profiles}", "\n\n\n".join(profiles)).replace("{conversations}", conv) \
                .replace("{role_name}", meta["name"]).replace("{options}", opts)
    t = SA_EN if en else SA_ZH
    return t.replace("{role_profile}", meta["profile"][meta["name"]]).replace("{conversations}", conv) \
            .replace("{role_name}", meta["name"]).replace("{options}", opts)


def _dlg(*pairs: tuple[str, str]) -> list[dict]:
    return [{"from": a, "value": b} for a, b in pairs]


SHERLOCK = "Sherlock Holmes is a consulting detective.\n\nHe lives at 221B Baker Street.\nHe plays the violin."
LONG_PROFILE = "\n".join(f"line {i}" for i in range(1, 15)).replace("line 3\n", "line 3\n\n\n")

SELF_AWARENESS = [
    {"dialogue": _dlg(("Watson", "Where were you last night?"), ("Sherlock Holmes", "Following a hunch.")),
     "instruction": "Choose Sherlock's reply.", "choices": {"A": "Elementary, my dear Watson.", "B": "Dunno, mate.",
                                                              "C": "I was asleep.", "D": "Ask Mrs Hudson."},
     "label": ["A"], "meta": {"lang": "en", "category": "Individual-SA-RoleStyle", "name": "Sherlock Holmes",
                              "profile": {"Sherlock Holmes": SHERLOCK}}},
    {"dialogue": _dlg(("华生", "你昨晚去哪了？")), "instruction": "",
     "choices": {"A": "贝克街", "B": "伦敦塔", "C": "巴黎", "D": "纽约"}, "label": ["A"],
     "meta": {"lang": "zh", "category": "Individual-SA-RoleKnowledge", "name": "福尔摩斯",
              "profile": {"福尔摩斯": "咨询侦探。\n住在贝克街221B。"}}},
]
EMOTIONAL = [
    {"dialogue": _dlg(("Ann", "I lost my keys again."), ("Bob", "Oh no, not again!")),
     "instruction": "Select the option that best matches the mood of the speaker in the last utterance:",
     "choices": {"A": "fear", "B": "sadness", "C": "surprise", "D": "anger", "E": "disgust", "F": "joy",
                 "G": "neutral", "H": "non-neutral"}, "label": ["C"],
     "meta": {"emotion": "surprise", "lang": "en", "category": "Individual-EP-DialogueEmotionDetect"}},
    {"dialogue": _dlg(("甲", "我中彩票了！")), "instruction": "选择最符合说话者心情的选项：",
     "choices": {"A": "高兴", "B": "难过", "C": "生气", "D": "害怕"}, "label": ["A"],
     "meta": {"emotion": "高兴", "lang": "zh", "category": "Individual-EP-DialogueEmotionDetect"}},
    {"dialogue": _dlg(("User", "Which sentence is a joke? Single choice.")), "instruction": "",
     "choices": {"A": "Why did the chicken cross the road? To get to the other side.", "B": "It rains.",
                 "C": "The bus is late.", "D": "Prices went up."}, "label": ["A"],
     "meta": {"lang": "en", "category": "Individual-EP-HumorSarcasmDetect"}},
    {"dialogue": _dlg(("User", "A client feels stressed at work and sleeps badly. Causes? Multiple choice.")),
     "instruction": "", "choices": {"A": "deadlines", "B": "the weather", "C": "sleep loss", "D": "his shoes"},
     "label": ["A", "C"], "meta": {"source": "gpt4", "lang": "en", "keyword": "stress", "gpt4": ["A", "C"],
                                   "category": "Individual-EP-SituationUnderstanding"}},
]
MEMORY = [
    {"dialogue": _dlg(*[("User" if i % 2 == 0 else "Beth", f"utterance {i}") for i in range(39)]),
     "instruction": "Reply as Beth.", "label": ["Patriots", "football"],
     "meta": {"lang": "en", "category": "Individual-MEM", "name": "Beth", "profile": {"Beth": "Gentle; loves football."}}},
    {"dialogue": _dlg(*[("User" if i % 2 == 0 else "Beth", f"utterance {i}") for i in range(40)]),
     "instruction": "", "label": ["violin"],
     "meta": {"lang": "en", "category": "Individual-MEM-Long", "name": "Beth", "profile": {"Beth": "Plays the violin."}}},
    {"dialogue": _dlg(("User", "你最喜欢的球队是哪个？")), "instruction": "", "label": ["湖人"],
     "meta": {"lang": "zh", "category": "Individual-MEM-Short", "name": "小王", "profile": {"小王": "篮球迷。"}}},
]
SOCIAL = [
    {"dialogue": _dlg(("Ann", "Let's all help Carl move house."), ("Carl", "Thanks, friends!")),
     "instruction": "", "choices": {"A": "Count me in!", "B": "No.", "C": "Maybe later.", "D": "Whatever."},
     "label": ["A"], "meta": {"lang": "en", "category": "Group-SAP-Positive", "name": "Dora",
                              "profile": {"Ann": "Ann is kind.", "Dora": LONG_PROFILE, "Carl": "Carl\n\nmoves"}}},
    {"dialogue": _dlg(("甲", "我们一起去吃饭吧。")), "instruction": "",
     "choices": {"A": "好啊", "B": "不去", "C": "随便", "D": "再说"}, "label": ["B"],
     "meta": {"lang": "zh", "category": "Group-SAP-Negative", "name": "乙", "profile": {"甲": "热情。", "乙": "冷漠。"}}},
    {"dialogue": _dlg(("Ann", "What should we do today?")), "instruction": "",
     "choices": {"A": "Go hiking.", "B": "Stay in.", "C": "Read.", "D": "Sleep."}, "label": ["C"],
     "meta": {"lang": "en", "category": "Group-SAP-Neutral", "name": "Bo", "profile": {"Ann": "Ann.", "Bo": "Bo."}}},
]
FILES = {"self_awareness.json": SELF_AWARENESS, "emotional_perception.json": EMOTIONAL,
         "conversation_memory.json": MEMORY, "social_preference.json": SOCIAL}


def write_data(folder: Path, files: dict[str, list] | None = None, crlf: bool = True) -> Path:
    """The four files (or `files`) as the official repository lays them out (indented JSON, CRLF)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, items in (files or FILES).items():
        text = json.dumps(items, ensure_ascii=False, indent=4)
        (folder / name).write_bytes((text.replace("\n", "\r\n") if crlf else text).encode("utf-8"))
    return folder
