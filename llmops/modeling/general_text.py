"""Plain English paragraphs, written for this project, used twice: to prove a pulled base model is real
(its perplexity here is far below a random model's) and to catch forgetting after fine-tuning."""

GENERAL_TEXT: tuple[str, ...] = (
    "The river runs through the middle of the town, and most of the old houses stand close to its banks. "
    "In spring the water rises after the snow melts in the hills, and people who live near the bridge "
    "keep sandbags ready by their doors. By summer the level falls again, children swim in the shallow "
    "places, and fishermen sit on the stone steps in the early morning.",
    "A good breakfast does not need to be complicated. Many families eat bread with butter and jam, a "
    "bowl of fruit, and a cup of tea or coffee. Others prefer eggs, cooked in a pan with a little oil and "
    "salt. What matters most is that people eat something before they start the day, because it is hard "
    "to work or study well on an empty stomach.",
    "When the train arrived at the station, the platform was already crowded with travellers. Some of "
    "them carried heavy suitcases, while others had only a small bag over one shoulder. A voice on the "
    "speaker announced that the train would leave in five minutes, and everyone began to look for a seat "
    "near a window.",
    "Learning a new language takes time and patience. At first, even simple sentences feel strange, and "
    "it is easy to forget the words you learned the day before. With practice, however, the sounds become "
    "familiar, and one day you notice that you understood a whole conversation without translating it in "
    "your head.",
    "The library opens at nine in the morning and closes at six in the evening. Visitors can borrow up to "
    "ten books at a time, and they may keep them for three weeks. If a book is late, the library sends a "
    "short letter as a reminder, and most people return it within a few days.",
    "Weather in the mountains can change very quickly. A clear blue sky in the morning may turn grey by "
    "noon, and a light wind can become a storm in less than an hour. Experienced walkers always carry a "
    "warm jacket, some water and a map, even when the day looks calm and bright.",
)
