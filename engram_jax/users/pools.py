"""Value pools for the synthetic user and persona generators.

The pools are deliberately large (hundreds of names, dozens of cities, jobs and
hobbies), so two generated users rarely share an answer by chance. Values are
plain strings with no braces, because the generators put them into
`str.format` templates. Tests check that no pool contains a duplicate.
"""


def _words(text: str) -> tuple[str, ...]:
  return tuple(text.split())


def _items(text: str) -> tuple[str, ...]:
  """Split a ";"-separated block into items; line breaks inside an item become spaces."""
  return tuple(" ".join(item.split()) for item in text.split(";") if item.strip())


FIRST_NAMES = _words("""
Aaliyah Aarav Abigail Adaeze Adrian Agnes Ahmed Aiko Aisha Alana Alejandro Alex Alina
Amara Amelia Amir Ana Anders Andrea Anika Ansel Anton Aria Arjun Arlo Asha Astrid
Aurora Avery Axel Ayla Beatrix Bella Benedikt Bianca Bjorn Blake Bodhi Bram Brenna
Bruno Caleb Camila Carmen Cassius Cecilia Chandra Chiara Chidi Chloe Ciaran Clara
Colette Conrad Cora Cyrus Dalia Damian Dana Daniela Dante Darius Delphine Desmond Devi
Diego Dmitri Dolores Dominic Dorothea Eamon Eden Edgar Elif Elijah Elise Elsa Emeka
Emil Emilia Enzo Esme Esther Ethan Eva Ezra Farah Fatima Felix Fern Filipa Finn
Fiona Florian Freya Gabriel Gemma Georgia Gianna Gideon Greta Gustavo Hana Hannah
Harper Hassan Hazel Hector Helga Henrik Hiro Hugo Ida Ifeoma Ignacio Ilse Imani Ines
Ingrid Iris Isaac Isabel Ivan Jada Jamal Jasper Javier Jin Joaquin Jonah Jordan Josefine
Juan Jude Julia Juniper Kai Kalani Kamala Karim Kasia Keanu Kenji Keziah Kiara Kofi
Lachlan Laila Lars Layla Leila Lena Leon Levi Liam Lidia Lila Linnea Lorenzo Lucia
Luka Lydia Mabel Magnus Malak Malcolm Mara Marco Margot Marisol Mateo Matilda Maya
Mei Mikael Milan Mira Moana Mohan Nadia Naomi Nasser Nia Nico Nikhil Nina Noor Nora
Obi Octavia Olek Olivia Omar Oona Orla Oscar Paloma Paolo Parisa Pavel Penelope Petra
Pilar Priya Quentin Quinn Rafael Rahul Ramona Rania Raquel Ravi Reza Rhea Riley Rocco
Rohan Rosa Rowan Ruby Rufus Sabine Sadie Salma Samir Sanna Santiago Sasha Selin Seren
Shira Silas Simone Soren Stella Sunita Sven Tala Tamsin Tariq Teo Thalia Theo Tobias
Tomas Una Uriel Valentina Vera Victor Vikram Viola Wanda Wen Wilhelmina Willa Xavier
Ximena Yara Yasmin Yusuf Zara Zeynep Zoe Zora Ambrose Beatriz Calla Dorian Elowen
Fabian Ginevra Idris Jovan Kenzo Lorelei Marek Nell Odile Percy Rosalind Thaddeus
Anouk Basile Cleo Dagny Eitan Folake Hiroshi Ilaria Jorah Kwame Lucan Maren Nayeli
Ulrich Vivienne Wren Yannick Zubair Bettina Cosmo Delia Evander Frida Hamza Ilona
""")

LAST_NAMES = _words("""
Abara Acosta Adeyemi Agarwal Ahlberg Alvarado Amsel Andersen Aoki Arroyo Ashworth
Baptiste Barros Bauer Becker Bellini Bergstrom Bhatt Bianchi Blackwood Bondarenko
Brandt Brennan Brooks Bustamante Calloway Campos Carrasco Castellanos Chakraborty Chen
Cho Cicek Claes Coelho Collins Cordova Costa Cruz Dahl Dalton Das Delacroix Demir
Dimitrov Dominguez Dubois Duarte Eklund Elliott Engel Espinoza Esposito Farouk Fernandes
Ferreira Fischer Fitzgerald Fleming Fontaine Forsberg Fujita Gallagher Garcia Gauthier
Gill Goldberg Gomez Gonzaga Gupta Haddad Hagen Halvorsen Hamid Hansen Harada Hartmann
Hashemi Hayes Henriksen Herrera Hoffman Holm Horvath Huang Ibarra Ibrahim Iglesias Ito
Ivanova Jablonski Jansen Jaramillo Jensen Jimenez Joshi Juarez Kaczmarek Kahananui Kamau
Kapoor Karlsson Kato Kaur Keller Khan Kim Kimura Kipkemboi Klein Koenig Kowalski Krause
Kumar Kuznetsov Lachance Lambert Larsen Laurent Lee Lehmann Leone Lindgren Lindqvist
Lopes Lorenz Lundberg Macias Madsen Mahmoud Maldonado Mancini Marchetti Marquez Martel
Matsuda Medina Mehta Meier Mendoza Mercer Meyer Mishra Molina Monroe Moreau Morales
Moretti Mukherjee Murphy Nakamura Nair Navarro Ndlovu Nielsen Nikolaidis Noguchi
Novak Nowak Nunez Nyberg Obi Odhiambo Ogawa Okafor Okonkwo Oliveira Olsen Ortega
Osei Ostrowski Ozturk Pacheco Park Patel Pereira Petrov Pham Pillai Popescu Quintero
Rahman Ramos Rao Rasmussen Reddy Reyes Richter Rivera Rocha Romano Rosales Rossi
Russo Saito Salazar Salo Sandoval Santoro Sato Schafer Schmidt Schneider Serrano
Shah Shapiro Sharma Silva Singh Sokolov Solberg Sorensen Suarez Sullivan Suzuki Tanaka
Tavares Teixeira Thakur Thorsen Toivonen Torres Tran Trujillo Tsai Ueda Ulloa Valdez
Varga Vasquez Vega Verma Vogel Wagner Walsh Watanabe Weber Wolff Wong Wu Yamada Yamamoto
Yilmaz Yoon Zamora Zhang Zielinski Zimmermann Achebe Banerjee Castellano Devereaux
Eriksen Falcone Grimaldi Hollis Iwasaki Jovanovic Kowalczyk Lacroix Mwangi Nakashima
Oyelaran Pellegrini Quispe Rautio Szabo Takahashi Underhill Vasiliev Whitfield Xiong
Yeboah Zapata Abernathy Bjork Cabrera Drummond Estrada Faulkner Guerrero Hendricks
Adebayo Brannigan Castillo Dunleavy Ekstrom Fairbanks Galloway Hakimi Ingram Jorgensen
Karimi Lindahl Mbeki Nordin Olawale Prescott Quaresma Rourke Ruiz Tolbert
Urquhart Valente Winslow Yazdani Zaragoza
""")

# (city, timezone abbreviation in standard time)
CITIES = (
    ("Albuquerque", "MST"), ("Anchorage", "AKST"), ("Atlanta", "EST"),
    ("Austin", "CST"), ("Baltimore", "EST"), ("Boise", "MST"), ("Boston", "EST"),
    ("Buffalo", "EST"), ("Charleston", "EST"), ("Chicago", "CST"),
    ("Cincinnati", "EST"), ("Cleveland", "EST"), ("Columbus", "EST"),
    ("Dallas", "CST"), ("Denver", "MST"), ("Des Moines", "CST"), ("Detroit", "EST"),
    ("El Paso", "MST"), ("Fresno", "PST"), ("Honolulu", "HST"), ("Houston", "CST"),
    ("Indianapolis", "EST"), ("Kansas City", "CST"), ("Las Vegas", "PST"),
    ("Louisville", "EST"), ("Madison", "CST"), ("Memphis", "CST"), ("Miami", "EST"),
    ("Milwaukee", "CST"), ("Minneapolis", "CST"), ("Nashville", "CST"),
    ("New Orleans", "CST"), ("Oakland", "PST"), ("Oklahoma City", "CST"),
    ("Omaha", "CST"), ("Philadelphia", "EST"), ("Phoenix", "MST"),
    ("Pittsburgh", "EST"), ("Providence", "EST"), ("Raleigh", "EST"), ("Reno", "PST"),
    ("Richmond", "EST"), ("Sacramento", "PST"), ("Salt Lake City", "MST"),
    ("San Antonio", "CST"), ("San Diego", "PST"), ("Santa Fe", "MST"),
    ("Savannah", "EST"), ("Seattle", "PST"), ("Spokane", "PST"), ("St. Louis", "CST"),
    ("Tacoma", "PST"), ("Tampa", "EST"), ("Tucson", "MST"), ("Tulsa", "CST"),
    ("Amsterdam", "CET"), ("Auckland", "NZST"), ("Berlin", "CET"), ("Bogota", "COT"),
    ("Cape Town", "SAST"), ("Copenhagen", "CET"), ("Dublin", "GMT"),
    ("Edinburgh", "GMT"), ("Helsinki", "EET"), ("Lisbon", "WET"), ("Melbourne", "AEST"),
    ("Montreal", "EST"), ("Nairobi", "EAT"), ("Osaka", "JST"), ("Seoul", "KST"),
    ("Singapore", "SGT"), ("Toronto", "EST"), ("Vancouver", "PST"), ("Vienna", "CET"),
)

JOBS = _items("""
accountant; actuary; architect; art director; audio engineer; backend developer; barista
trainer; biomedical engineer; bookkeeper; brand strategist; carpenter; chemistry
teacher; civil engineer; claims adjuster; clinical researcher; community organizer; copy
editor; data analyst; data engineer; dental hygienist; dietitian; electrician; emergency
dispatcher; environmental consultant; event planner; film editor; financial planner;
firefighter; flight attendant; florist; game designer; geologist; graphic designer;
grant writer; high school counselor; historian; hotel manager; human resources
specialist; illustrator; insurance broker; interior designer; investment analyst;
journalist; lab technician; landscape architect; librarian; locksmith; logistics
coordinator; machinist; marine biologist; marketing manager; mechanical engineer;
medical coder; music teacher; nurse practitioner; occupational therapist; optometrist;
paralegal; park ranger; pastry chef; pharmacist; photographer; physical therapist;
pilot; plumber; podcast producer; product designer; product manager; project manager;
property manager; psychologist; public defender; quality inspector; radio host; real
estate agent; recruiter; restaurant manager; sales engineer; school principal; security
analyst; site reliability engineer; social worker; software engineer; sommelier; speech
therapist; statistician; structural engineer; surveyor; tattoo artist; tax preparer;
technical writer; translator; travel agent; design researcher; veterinarian; video
producer; web developer; wildlife photographer; yoga instructor
""")

# An employer is one head word and one tail word, for example "Bluefin Analytics".
EMPLOYER_HEADS = _words("""
Acorn Alder Anchor Apex Arbor Argent Aspen Atlas Beacon Birch Bluefin Boulder Bramble
Brightwater Canopy Cascade Cedar Cinder Clearpath Cobalt Compass Copper Crescent Delta
Driftwood Ember Evergreen Falcon Fernhill Fieldstone Firefly Foxglove Granite Harbor
Hearth Heron Highland Horizon Ironwood Juniper Keystone Kestrel Lantern Larkspur Ledger
Lighthouse Linden Lodestar Maple Meadow Meridian Mosaic Northwind Oakridge Orchard
Osprey Pinnacle Prairie Quarry Quill Redwood Ridgeline Riverbend Saffron Sandpiper
Sequoia Silverline Slate Solstice Sparrow Stonebridge Summit Sycamore Tidewater Timber
Trillium Tundra Verdant Willow Windmill Zephyr
""")

EMPLOYER_TAILS = _items("""
Analytics; Bakery; Biotech; Brewing; Builders; Capital; Clinic; Consulting; Credit
Union; Design Studio; Dynamics; Energy; Engineering; Foods; Freight; Games; Health;
Hospitality; Insurance; Labs; Law Group; Logistics; Media; Medical Group; Motors;
Networks; Outfitters; Partners; Pharmacy; Press; Realty; Robotics; Software; Solar;
Systems; Textiles; Therapeutics; Tools; Travel; Works
""")

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# Species start with a consonant sound, so templates can say "a {species}".
PET_SPECIES = _items("""
cat; dog; rabbit; parrot; hamster; guinea pig; tortoise; ferret; goldfish; bearded
dragon; cockatiel; corn snake; hedgehog; chinchilla; budgie
""")

PET_NAMES = _words("""
Apollo Archie Bagel Banjo Basil Bean Biscuit Blue Bonnie Boots Brisket Bubbles Buttons
Cashew Chai Charlie Cheddar Chester Chickpea Cinnamon Clementine Clover Cocoa Comet
Cookie Crumpet Daisy Dexter Dumpling Echo Ember Espresso Falafel Fig Figaro Finnegan
Fizz Flapjack Gizmo Goose Gouda Gravy Hazelnut Honey Huckleberry Iggy Indigo Jellybean
Jinx Juno Kiwi Koda Latte Lemon Loki Lulu Mango Maple Marble Meatball Milo Mochi Moose
Muffin Nacho Noodle Nugget Nutmeg Olive Onyx Oreo Otis Paprika Peaches Peanut Pepper
Pickles Pip Pixel Plum Poppy Pretzel Pudding Pumpkin Quincy Radish Ravioli Rocket
Rolo Rosie Rusty Saffron Sage Scout Sesame Shadow Sprout Sunny Taco Tater Tofu Toffee
Truffle Tulip Turnip Waffles Walnut Wasabi Whiskers Widget Yoshi Ziggy Zucchini Zuzu
""")

CAR_MODELS = _items("""
Acura Integra; Audi A4; Audi Q5; BMW 330i; BMW X3; Buick Encore; Chevrolet Bolt;
Chevrolet Equinox; Chevrolet Silverado; Chrysler Pacifica; Dodge Charger; Fiat 500; Ford
Bronco; Ford Escape; Ford F-150; Ford Maverick; Ford Mustang; Genesis G70; GMC Sierra;
Honda Accord; Honda Civic; Honda CR-V; Honda Fit; Honda Odyssey; Hyundai Elantra;
Hyundai Ioniq 5; Hyundai Kona; Hyundai Tucson; Jeep Cherokee; Jeep Wrangler; Kia Niro;
Kia Soul; Kia Telluride; Lexus RX 350; Mazda CX-5; Mazda Miata; Mazda3; Mini Cooper;
Mitsubishi Outlander; Nissan Altima; Nissan Leaf; Nissan Rogue; Polestar 2; Porsche
Macan; Ram 1500; Rivian R1S; Subaru Crosstrek; Subaru Forester; Subaru Outback; Tesla
Model 3; Tesla Model Y; Toyota 4Runner; Toyota Camry; Toyota Corolla; Toyota Prius;
Toyota RAV4; Toyota Tacoma; Volkswagen Golf; Volkswagen Jetta; Volvo XC60
""")

HOBBIES = _items("""
archery; astrophotography; beekeeping; birdwatching; board games; bouldering; bread
baking; calligraphy; candle making; canoeing; ceramics; chess; crossword puzzles;
cycling; disc golf; embroidery; fencing; fly fishing; foraging; furniture restoration;
geocaching; glassblowing; hiking; home brewing; ice skating; jigsaw puzzles; kayaking;
knitting; leatherworking; model railroading; mountain biking; origami; paddleboarding;
painting watercolors; photography; playing the cello; playing the banjo; pottery;
quilting; rock collecting; rowing; salsa dancing; scuba diving; sketching; skiing;
snowboarding; stand-up comedy; stargazing; surfing; swing dancing; tai chi; tennis;
trail running; urban gardening; vinyl collecting; woodcarving; writing poetry
""")

CUISINES = _words("""
Afghan Argentinian Brazilian Burmese Cajun Cambodian Caribbean Chinese Cuban Ethiopian
Filipino French Georgian Greek Hawaiian Indian Indonesian Iranian Italian Jamaican
Japanese Korean Lebanese Malaysian Mexican Moroccan Nepali Nigerian Peruvian Polish
Portuguese Russian Sichuan Spanish Thai Turkish Ukrainian Vietnamese
""")

# Recurring weekly activities (the ROUTINE and DAY_SET questions ask about them).
ACTIVITIES = _items("""
gym; yoga; swimming; choir practice; pilates; rock climbing; spin class; boxing; soccer
practice; book club; volunteering; piano lessons; language class; tennis lessons; dance
class; martial arts; running club; rowing practice; therapy; pottery class; improv
class; basketball; bowling league; trivia night
""")

PHONE_MODELS = _items("""
iPhone 13; iPhone 14; iPhone 15; iPhone 16; iPhone SE; Pixel 7; Pixel 8; Pixel 8a; Pixel
9; Galaxy S22; Galaxy S23; Galaxy S24; Galaxy A54; Galaxy Z Flip5; Fairphone 4;
Fairphone 5; Moto G Power; Motorola Edge; Nothing Phone 2; Zenfone 10
""")

COFFEES = _items("""
americano; cappuccino; cold brew; cortado; drip coffee; espresso; flat white; iced
latte; latte; macchiato; mocha; oat milk latte; pour-over; red eye; vanilla latte;
affogato; Irish coffee; Turkish coffee; Vietnamese iced coffee; chai latte
""")

COLORS = _items("""
amber; aquamarine; burgundy; burnt orange; charcoal; cherry red; cobalt blue; coral;
cornflower blue; crimson; emerald green; forest green; gold; indigo; ivory; jade;
lavender; lemon yellow; lilac; magenta; maroon; mint green; mustard yellow; navy blue;
ochre; olive green; peach; periwinkle; plum; powder blue; rose pink; royal blue; rust;
sage green; salmon; sapphire; scarlet; sea green; sky blue; slate gray; tangerine;
taupe; teal; terracotta; turquoise; violet
""")

# Dish -> the allergens it contains. An allergy question calls a dish unsafe
# exactly when it contains the user's allergen.
DISHES = {
    "pad thai": ("peanuts", "eggs", "fish", "soy"),
    "peanut butter cookies": ("peanuts", "gluten", "eggs", "dairy"),
    "satay skewers": ("peanuts", "soy"),
    "kung pao chicken": ("peanuts", "soy", "gluten"),
    "shrimp scampi": ("shellfish", "dairy", "gluten"),
    "lobster roll": ("shellfish", "gluten", "eggs"),
    "crab cakes": ("shellfish", "eggs", "gluten"),
    "paella": ("shellfish", "fish"),
    "spaghetti carbonara": ("gluten", "eggs", "dairy"),
    "sourdough toast": ("gluten",),
    "beef ramen": ("gluten", "soy", "eggs"),
    "pizza margherita": ("gluten", "dairy"),
    "mac and cheese": ("dairy", "gluten"),
    "cheesecake": ("dairy", "eggs", "gluten"),
    "palak paneer": ("dairy",),
    "greek yogurt parfait": ("dairy", "tree nuts"),
    "omelette": ("eggs", "dairy"),
    "egg salad sandwich": ("eggs", "gluten"),
    "shakshuka": ("eggs",),
    "edamame": ("soy",),
    "miso soup": ("soy", "fish"),
    "mapo tofu": ("soy",),
    "pesto pasta": ("tree nuts", "dairy", "gluten"),
    "baklava": ("tree nuts", "gluten", "dairy"),
    "almond croissant": ("tree nuts", "gluten", "dairy", "eggs"),
    "hummus": ("sesame",),
    "sesame bagel": ("sesame", "gluten"),
    "tahini salad": ("sesame",),
    "salmon sushi": ("fish", "soy"),
    "fish and chips": ("fish", "gluten"),
    "tuna nicoise": ("fish", "eggs"),
    "grilled chicken with rice": (),
    "black bean tacos": (),
    "roasted vegetable salad": (),
    "lentil curry": (),
    "fruit salad": (),
    "baked potato": (),
    "beef stew": (),
    "guacamole with corn chips": (),
}

ALLERGENS = ("peanuts", "shellfish", "gluten", "dairy", "eggs", "soy", "tree nuts",
             "sesame", "fish")

# Organisation pools for the persona documents.
INDUSTRIES = _items("""
renewable energy; medical devices; online education; freight shipping; specialty coffee;
cybersecurity; outdoor gear; children's books; agricultural drones; boutique hotels; pet
insurance; video games; furniture; water filtration; satellite imaging; plant-based
foods
""")

MASCOTS = _words("""
badger beaver bison crane falcon fox hawk heron lynx moose otter owl panda pelican
raccoon salmon stag tortoise walrus wolf
""")

PRODUCTS = _items("""
a budgeting app; a compact heat pump; a folding kayak; a home soil sensor; a language
tutoring service; a line of hiking boots; a modular bookshelf; a noise-cancelling
headset; a recycled-plastic backpack; a smart thermostat; a solar phone charger; a
tabletop strategy game; a travel stroller; an electric cargo bike; an oat-milk ice
cream; an open-source database
""")
