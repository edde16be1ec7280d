"""Sentence templates for the synthetic personal schema, one entry per fact key.

Each template is a `str.format` string. Placeholders: {a} the rendered answer,
{art} "a" or "an" for the answer, {n} the full name, {f} the first name, and
any attribute of the user by name ({spouse_name}, {activity}, ...).

`first` and `third` are statements in the first and third person; every key
has at least one statement that ends with "{a}." so a writing prompt exists
without the fallback. `ask` is the user's own question (direct_qa) and
`ask_third` the same question about the person, for persona documents.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class FactTemplates:
  first: tuple[str, ...]
  third: tuple[str, ...]
  ask: str
  ask_third: str


def _t(first: tuple[str, ...], third: tuple[str, ...], ask: str, ask_third: str) -> FactTemplates:
  return FactTemplates(first, third, ask, ask_third)


# Fact keys in file order. spouse_*, child_* only exist for users with that relative.
TEMPLATES: dict[str, FactTemplates] = {
    "name": _t(("My name is {a}.", "People know me as {a}.", "{a} is my full name."),
               ("This profile belongs to {a}.",),
               "What full name do I go by?", "What is the person's full name?"),
    "birth_year": _t(("I was born in {a}.", "My year of birth is {a}."),
                     ("{n} was born in {a}.",),
                     "In which year was I born?", "In which year was {n} born?"),
    "city": _t(("I live in {a}.", "Home for me is {a}.", "I moved to {a} a few years ago."),
               ("{n} lives in {a}.", "{f} makes a home in {a}."),
               "Which city do I call home?", "Which city does {n} live in?"),
    "timezone": _t(("My time zone is {a}.", "I keep my calendar in {a}."),
                   ("{f}'s clock is set to {a}.",),
                   "Which time zone do I live in?", "Which time zone is {n} in?"),
    "job": _t(("I work as {art} {a}.", "My job title is {a}."),
              ("{n} works as {art} {a}.", "By profession, {f} is {art} {a}."),
              "What do I do for a living?", "What does {n} do for a living?"),
    "employer": _t(("I work at {a}.", "My employer is {a}.", "{a} pays my salary."),
                   ("{n} is employed by {a}.",),
                   "Which company employs me?", "Which company does {n} work for?"),
    "workdays": _t(("I work on {a}.", "My workdays are {a}."),
                   ("{f} goes to work on {a}.",),
                   "On which days of the week do I work?", "On which days does {n} work?"),
    "work_start": _t(("I start work at {a}.", "My workday begins at {a}."),
                     ("{f}'s shift starts at {a}.",),
                     "At what time does my workday begin?", "When does {n} start work?"),
    "commute_min": _t(("My one-way commute in minutes is {a}.",
                       "Getting to work takes me {a} minutes."),
                      ("In minutes, {f}'s commute each way is {a}.",),
                      "How many minutes does my commute take each way?",
                      "How long is {n}'s commute in minutes?"),
    "pet": _t(("I have {art} {a}.", "At home I look after {art} {a}.", "My pet is {art} {a}."),
              ("{n} owns {art} {a}.",),
              "What pet do I have, and what is its name?", "What pet does {n} have?"),
    "car": _t(("I drive a {a}.", "My car is a {a}."),
              ("{n} drives a {a}.", "Parked outside {f}'s place is a {a}."),
              "What car do I drive?", "What car does {n} drive?"),
    "car_year": _t(("My car's model year is {a}.", "The car I drive was built in {a}."),
                   ("{f}'s car dates from {a}.",),
                   "What model year is my car?", "What model year is {n}'s car?"),
    "hobby1": _t(("My main hobby is {a}.", "In my free time I love {a}."),
                 ("{n}'s favorite pastime is {a}.",),
                 "What is my main hobby?", "What is {n}'s main hobby?"),
    "hobby2": _t(("I'm also into {a}.", "My second hobby is {a}."),
                 ("{n} also enjoys {a}.",),
                 "What other hobby do I have?", "What second hobby does {n} have?"),
    "cuisine": _t(("My favorite cuisine is {a}.", "I could eat {a} food every day."),
                  ("The cuisine {f} likes best is {a}.",),
                  "Which cuisine do I like best?", "Which cuisine does {n} like best?"),
    "allergy": _t(("I am allergic to {a}.", "I have to avoid {a} because of an allergy."),
                  ("{n} has an allergy to {a}.",),
                  "What am I allergic to?", "What is {n} allergic to?"),
    "spouse_name": _t(("I'm married to {a}.", "My partner's name is {a}."),
                      ("{n} is married to {a}.",),
                      "Who is my spouse?", "Who is {n} married to?"),
    "spouse_year": _t(("{spouse_name} was born in {a}.", "My partner's birth year is {a}."),
                      ("{f}'s spouse was born in {a}.",),
                      "When was my spouse born?", "When was {n}'s spouse born?"),
    "child_name": _t(("My child's name is {a}.", "I have a kid named {a}."),
                     ("{n}'s child is named {a}.",),
                     "What is my child called?", "What is {n}'s child called?"),
    "child_year": _t(("{child_name} was born in {a}.", "My kid was born in {a}."),
                     ("{f}'s child was born in {a}.",),
                     "What year was my child born in?", "What year was {n}'s child born in?"),
    "sibling_name": _t(("My sibling's name is {a}.", "I grew up with my sibling {a}."),
                       ("{n} has a sibling named {a}.",),
                       "What is my sibling's name?", "What is the name of {n}'s sibling?"),
    "sibling_year": _t(("{sibling_name} was born in {a}.", "My sibling's birth year is {a}."),
                       ("{f}'s sibling was born in {a}.",),
                       "In what year was my sibling born?", "When was {n}'s sibling born?"),
    "activity": _t(("My standing weekly commitment is {a}.", "Every week I make time for {a}."),
                   ("Each week {f} goes to {a}.",),
                   "What do I do every week?", "What does {n} do every week?"),
    "activity_days": _t(("I have {activity} on {a}.", "My {activity} days are {a}."),
                        ("{f} has {activity} on {a}.",),
                        "On which days do I have {activity}?",
                        "On which days does {n} have {activity}?"),
    "rent": _t(("In dollars, my monthly rent is {a}.", "My rent is {a} dollars a month."),
               ("{f}'s monthly rent, in dollars, is {a}.",),
               "How many dollars do I pay in rent each month?",
               "How much rent does {n} pay each month?"),
    "emergency_contact": _t(("My emergency contact is {a}.", "In an emergency, call {a}."),
                            ("{n} lists {a} as an emergency contact.",),
                            "Who is my emergency contact?", "Who is {n}'s emergency contact?"),
    "ec_phone_last": _t(("{emergency_contact}'s phone number ends in {a}.",
                         "The last four digits of my emergency contact's number are {a}."),
                        ("The phone number of {f}'s emergency contact ends in {a}.",),
                        "What are the last four digits of {emergency_contact}'s phone number?",
                        "What are the last four digits of {n}'s emergency number?"),
    "phone_model": _t(("My phone is {art} {a}.", "I carry {art} {a} everywhere."),
                      ("{n} uses {art} {a}.",),
                      "Which phone do I use?", "Which phone does {n} use?"),
    "doctor": _t(("My primary care doctor is {a}.", "I see {a} for checkups."),
                 ("{n}'s family doctor is {a}.",),
                 "Who is my primary care doctor?", "Who is {n}'s doctor?"),
    "dentist": _t(("My dentist is {a}.", "I get my teeth cleaned by {a}."),
                  ("{n} sees {a} for dental care.",),
                  "Who is my dentist?", "Who is {n}'s dentist?"),
    "coffee": _t(("My usual coffee order is {art} {a}.", "Most mornings I drink {art} {a}."),
                 ("{f} always orders {art} {a}.",),
                 "What coffee do I usually order?", "What coffee does {n} usually order?"),
    "running_pace": _t(("My running pace in minutes per mile is {a}.",
                        "I run a mile in about {a} minutes."),
                       ("{f} runs a mile in roughly {a} minutes.",),
                       "How many minutes does it take me to run a mile?",
                       "How fast does {n} run a mile?"),
    "shoe_size": _t(("My shoe size is {a}.", "I buy shoes in size {a}."),
                    ("{n} wears shoes in size {a}.",),
                    "What shoe size do I wear?", "What shoe size does {n} wear?"),
    "color": _t(("My favorite color is {a}.", "I love anything in {a}."),
                ("The color {f} likes most is {a}.",),
                "Which color do I like most?", "What is {n}'s favorite color?"),
}

OPTIONAL_KEYS = {
    "spouse_name": "spouse_name", "spouse_year": "spouse_name",
    "child_name": "child_name", "child_year": "child_name",
}  # fact key -> the attribute that must exist for the fact to be generated


def article(noun: str) -> str:
  """Return "an" before a vowel letter, else "a" (the pools avoid exceptions such as "hour")."""
  return "an" if noun[:1].lower() in "aeiou" else "a"
