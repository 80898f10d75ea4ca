"""Our own word lists for data/prompts.py (written for this project): names, places, products, facts, and the
SLOTS that fill "{slot}" in the prompt templates ("{slot2}" draws a second, distinct value)."""

from __future__ import annotations


def _l(text: str) -> list[str]:
    """A "|"-separated list written across lines."""
    return [" ".join(item.split()) for item in text.split("|") if item.strip()]


NAMES = _l("""Anna|Ben|Carla|David|Elena|Farid|Grace|Hiro|Ines|Jonas|Kofi|Lena|Mateo|Nadia|Omar|Priya|Quinn|Rosa|Sam|
    Tara|Umar|Vera|Wei|Yara|Zoe|Leo|Maya|Noah|Iris|Tom|Aisha|Lucas|Mina|Pablo|Sofia|Ravi|Hana|Ivan|Chloe|Emeka""")
CITIES = _l("""Lisbon|Nairobi|Osaka|Toronto|Lima|Oslo|Hanoi|Dublin|Seville|Cape Town|Melbourne|Istanbul|Montreal|Prague|
    Marrakesh|Kyoto|Edinburgh|Buenos Aires|Vienna|Seoul|Copenhagen|Mexico City|Athens|Budapest|Singapore|Krakow""")
TOWNS = _l(
    "Millbrook|Eastwick|Stonebridge|Red Harbor|Pinefield|Ashford|Cloverdale|Westmere|Brightwater|Oakhill"
)
MONTHS = _l("January|February|March|April|May|June|July|August|September|October|November|December")
DAYS = _l("Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday")
ITEMS = _l(
    "notebooks|pens|apples|tickets|mugs|sandwiches|plants|candles|books|pairs of socks|muffins|bus passes"
)


PRODUCTS = _l("""blender|backpack|desk lamp|phone case|coffee maker|pair of running shoes|tent|keyboard|rice cooker|
    umbrella|electric kettle|yoga mat|bike light|winter coat|office chair|water bottle|bluetooth speaker|toaster""")
PRAISE = _l("""works exactly as described|is sturdy and easy to clean|arrived a day early|is quieter than I expected|
    looks even better in person|was simple to set up|feels well made|is worth every penny|is very comfortable""")
COMPLAINTS = _l("""it stopped working after two weeks|the zipper broke in the first week|it is much smaller than the photos
    suggest|the instructions were missing|it started making a strange noise|the color faded after one wash|
    customer service never answered my emails|it arrived with a cracked lid|it is heavier than advertised""")
FACTS = _l("""Honeybees communicate the location of flowers through a movement called the waggle dance.|
    The Great Wall of China was built and rebuilt over many centuries by different dynasties.|
    Regular walking can lower blood pressure and improve sleep in older adults.|
    Volcanic soil is often very fertile, which is why farms are common near some volcanoes.|
    The printing press made books cheaper and helped spread literacy across Europe.|
    Octopuses can change the color and texture of their skin to blend into their surroundings.|
    Many cities are planting trees along streets to keep neighborhoods cooler in summer.|
    The first public libraries in many towns were funded by local donations.|
    Sleeping less than six hours a night can make it harder to concentrate at work.|
    Electric buses are quieter than diesel buses and produce no exhaust on the street.|
    Tea was first drunk in China and later spread along trade routes to other countries.|
    Composting food scraps reduces waste and creates rich soil for gardens.|
    Glaciers in many mountain ranges have been shrinking for several decades.|
    Children who read for fun tend to build larger vocabularies.|
    The Moon's gravity is the main cause of the ocean tides on Earth.""")
GROUPS = {
    "fruits": _l("apple|mango|pear|plum|cherry|kiwi|grape|peach"),
    "vegetables": _l("carrot|spinach|onion|potato|broccoli|leek|cabbage|pepper"),
    "mammals": _l("whale|bat|horse|otter|goat|dolphin|mouse|tiger"),
    "birds": _l("penguin|owl|robin|eagle|parrot|swan|crow|ostrich"),
    "metals": _l("iron|copper|gold|silver|zinc|tin|aluminum|nickel"),
    "gases at room temperature": _l("oxygen|helium|nitrogen|neon|argon|hydrogen|chlorine|carbon dioxide"),
}


# slot lists for the string templates ("{slot}" reads SLOTS[slot]; "{slot2}" draws a second, distinct value)

SLOTS = {
    "subject": _l("""autumn leaves|the ocean at night|a lost umbrella|rain on a city street|a grandmother's kitchen|the first
        snow|a lighthouse|the moon|morning coffee|a busy train station|an old bicycle|a summer storm|a garden in spring|
        a sleepy cat|a mountain lake|a small library|a forgotten toy|the first day of school|a slow river|a bakery at
        dawn|a kite on a windy day|a desert at noon|a violin|a quiet Sunday|a paper boat|a broken clock|a hot air
        balloon|a fox in the snow|a street musician|an empty beach in winter|a dragonfly|a candle|the last day of
        summer|a snowman|a window seat|a lemon tree|a pair of old boots|fireflies|a treehouse|the smell of fresh
        bread|a night bus|a field of sunflowers|an old map|a jar of buttons|a thunderstorm at sea"""),
    "character": _l("""a shy robot|a retired sailor|a young baker|a curious squirrel|a lonely astronaut|an old librarian|
        a lost puppy|a clumsy wizard|a teenage inventor|a tired mail carrier|a brave little mouse|a grumpy cat|a
        night-shift nurse|a street painter|a farmer|a ghost who is afraid of the dark|a chess champion|a lighthouse
        keeper|a dragon who loves tea|a nervous bus driver|a penguin who wants to fly|a forgetful professor"""),
    "event": _l("""finds a mysterious key|gets lost in a big city|wins a contest by accident|discovers a hidden garden|
        loses their voice before a big show|receives a letter from the future|befriends a stranger on a train|has to
        cook dinner for a king|builds a boat from scraps|tries to learn to swim|must deliver a package before sunset|
        finds a map inside an old book|plants a seed that grows overnight|opens a tiny shop|misses the last train"""),
    "setting": _l("""a floating city|a small fishing village|a space station orbiting Mars|an underground library|a
        night market|a snowed-in mountain cabin|a castle made of glass|a busy hospital at midnight|a desert oasis|a
        train crossing the tundra|an abandoned amusement park|a rainforest research camp|a tiny island bookshop|a
        city where it never stops raining|a village at the bottom of the sea"""),
    "tone": _l("friendly|polite|formal|warm|short and cheerful|clear and professional"),
    "email": _l("""to your landlord asking them to fix a leaking tap|to a teacher asking for more time on an assignment|
        to a coworker thanking them for their help on a project|to your neighbors about a lost cat|to a hotel asking
        about early check-in|to a customer apologizing for a late delivery|to your team announcing a new meeting
        time|to a friend inviting them to a picnic|to a shop asking for a refund for a broken item|to a manager
        asking for a day off next Friday|to a former professor asking for a reference letter|to a club welcoming
        new members|to parents about a school trip next week|to a plumber asking for a quote"""),
    "product": _l("""a reusable water bottle|noise-cancelling headphones|a handmade wooden chess set|a solar phone
        charger|a lavender-scented candle|a foldable bicycle|a smart plant pot|a wool winter scarf|a travel coffee
        mug|a children's science kit|a waterproof hiking jacket|a set of kitchen knives|a cozy reading lamp"""),
    "occasion": _l("""a best friend's wedding|a retirement party for a coworker|the opening of a community garden|a
        school graduation|a grandparent's 80th birthday|the end of a sports season|a farewell party for a neighbor|
        the first day of a new team|a charity fun run|a family reunion"""),
    "business": _l("""a small bakery|a bike repair shop|a dog-walking service|a used bookstore|a yoga studio|a
        food truck selling tacos|a plant nursery|a tutoring center|a recycling startup|a neighborhood cafe|a
        window-cleaning company|a music school"""),
    "recipient": _l(
        "your grandmother|a former teacher|a neighbor|your cousin|a coworker|an old friend|your coach"
    ),
    "gift": _l("""a birthday book|helping you move house|a homemade cake|looking after your plants|a thoughtful
        letter|lending you their car|a surprise party"""),
    "invite": _l(
        "a board game night|a walk in the park|a concert on Saturday|a picnic by the lake|a movie night"
    ),
    "news": _l("""the opening of a new library branch|a bakery's new bread of the month|a school's science fair|a
        free yoga class in the park|a town clean-up day|the launch of a recycling program|a new bus route"""),
    "word": _l("SUN|RAIN|HOPE|BOOK|TREE|MUSIC|OCEAN|FRIEND|SPRING|LIGHT|GARDEN|DREAM|HOME|RIVER|STAR"),
    "animal": _l("a tortoise|a hare|a crow|a fox|an ant|a lion|a mouse|an owl|a goat|a frog|a bear|a crab"),
    "virtue": _l("patience|honesty|sharing|courage|kindness|hard work|listening|humility"),
    "place": _l("""a small Italian restaurant|a science museum|a seaside campsite|a new climbing gym|a city zoo|a
        rooftop cinema|a vegetarian cafe|a train museum|a botanical garden"""),
    "situation": _l("""starting a new job|training for a first marathon|studying for final exams|learning to play
        the piano|moving to a new country|recovering from an injury|learning a new language"""),
    "lang": ["Python"] * 4 + _l("JavaScript|Java|C|C++|Go|Rust|TypeScript|Ruby"),
    "task": _l("""reverses a string|checks whether a number is prime|counts the vowels in a string|returns the
        largest number in a list|removes duplicates from a list while keeping order|checks whether a word is a
        palindrome|converts Celsius to Fahrenheit|computes the factorial of a number|merges two sorted lists into
        one sorted list|finds the second largest number in a list|counts how often each word appears in a
        sentence|checks whether two strings are anagrams|flattens a nested list|returns the sum of the digits of an
        integer|converts an integer to its binary representation|finds the greatest common divisor of two numbers|
        capitalizes the first letter of every word|checks whether a year is a leap year|returns the average of a
        list of numbers|rotates a list by k positions|splits a list into chunks of size n|validates a simple email
        address|computes the running total of a list|finds the most common character in a string|checks whether a
        list is sorted|performs binary search on a sorted list|reverses the order of words in a sentence|removes
        all whitespace from a string|returns the items that two lists have in common|converts Roman numerals to
        integers|finds the missing number in a list containing 1 to n|returns the longest word in a sentence|
        counts the uppercase letters in a string|sums the even numbers in a list|swaps the keys and values of a
        dictionary|formats a number of seconds as hours, minutes and seconds|removes negative numbers from a list|
        checks whether parentheses in a string are balanced|sorts a list of words by length|returns the first
        non-repeating character in a string"""),
    "snippet": [
        "def f(xs):\n    return [x * 2 for x in xs if x % 2 == 0]",
        "total = 0\nfor i in range(1, 11):\n    total += i\nprint(total)",
        "def g(s):\n    return s == s[::-1]",
        "counts = {}\nfor word in text.split():\n    counts[word] = counts.get(word, 0) + 1",
        "top = sorted(set(nums), reverse=True)[:3]",
        "const evens = arr.filter(x => x % 2 === 0).map(x => x * x);",
        "with open('log.txt') as f:\n    errors = [line for line in f if 'ERROR' in line]",
        "a, b = b, a",
        "digits = []\nwhile n > 0:\n    digits.append(n % 10)\n    n //= 10",
        "def merge(a, b):\n    return {**a, **b}",
        "longest = max(sentence.split(), key=len)",
        "find . -name '*.log' -mtime +7 -delete",
        "SELECT city, COUNT(*) FROM customers GROUP BY city ORDER BY COUNT(*) DESC;",
        "squares = {n: n * n for n in range(1, 6)}",
    ],
    "buggy": [
        "def last_item(xs):\n    return xs[len(xs)]",
        "def add_item(item, items=[]):\n    items.append(item)\n    return items",
        "def sum_to(n):\n    # should return 1 + 2 + ... + n\n    total = 0\n    for i in range(n):\n        total += i\n    return total",
        "def greet(name, age):\n    return 'Hi ' + name + ', you are ' + age",
        "def remove_evens(xs):\n    for x in xs:\n        if x % 2 == 0:\n            xs.remove(x)\n    return xs",
        "def factorial(n):\n    if n == 0:\n        return 0\n    return n * factorial(n - 1)",
        "def maximum(xs):\n    best = 0\n    for x in xs:\n        if x > best:\n            best = x\n    return best",
        "def contains(xs, target):\n    for x in xs:\n        if x == target:\n            return True\n        else:\n            return False",
        "def average(xs):\n    return sum(xs) / len(xs)\n\nprint(average([]))",
    ],
    "code_pair": _l("""a list and a tuple in Python|== and is in Python|let and const in JavaScript|== and === in
        JavaScript|a process and a thread|a compiled and an interpreted language|git merge and git rebase|WHERE and
        HAVING in SQL|an HTTP GET and POST request|a shallow copy and a deep copy|a class and an object|a stack and
        a queue|an array and a linked list|a function and a method|static and dynamic typing|a library and a
        framework|unit tests and integration tests|synchronous and asynchronous code"""),
    "code_concept": _l("""recursion|variables|loops|APIs|unit tests|version control|Big O notation|hash tables|
        object-oriented programming|exceptions|regular expressions|pointers|JSON|environment variables|caching|
        databases and indexes|the call stack|type hints in Python|pure functions|immutability"""),
    "sql": _l("""lists all customers from a table named customers who live in Paris|counts the orders for each
        customer in a table named orders|finds the five most expensive products in a products table|returns the
        average salary per department from an employees table|deletes all rows older than one year from a logs
        table|finds employees who earn more than their manager|lists the months with more than 100 sales"""),
    "shell": _l("""undo my last git commit but keep the changes|find all files larger than 100 MB on Linux|count the
        lines in every Python file in a folder|rename many files at once in a shell|see which process is using port
        8080|create a Python virtual environment|schedule a script to run every night on Linux|compare two text
        files from the command line"""),
    "math_concept": _l("""a prime number|a fraction|a percentage|a ratio|the median|the mean|a variable|a function|
        the slope of a line|a square root|an exponent|a factorial|probability|a negative number|the Pythagorean
        theorem|a right angle|an equation|place value|a histogram|standard deviation|a logarithm|an inequality"""),
    "math_howto": _l("""the area of a circle|the mean of a list of numbers|the slope of a line through two points|a
        percentage increase|the volume of a cube|the least common multiple of two numbers|the hypotenuse of a right
        triangle|the volume of a cylinder|the sum of the angles of a polygon|a 15% tip in your head"""),
    "analogy": _l("""Bird is to nest as bee is to what?|Glove is to hand as sock is to what?|Pen is to writer as brush
        is to what?|Hot is to cold as tall is to what?|Page is to book as brick is to what?|Puppy is to dog as
        kitten is to what?|Thermometer is to temperature as clock is to what?|Fish is to water as bird is to what?|
        Chapter is to novel as scene is to what?|Seed is to tree as egg is to what?|Key is to lock as password is
        to what?"""),
    "odd": _l("""apple, banana, carrot, cherry|Mars, Venus, Moon, Jupiter|violin, cello, trumpet, harp|square,
        triangle, circle, cube|oak, pine, rose, maple|shark, dolphin, whale, seal|Paris, Berlin, Spain, Rome|two,
        four, seven, ten|copper, iron, glass, silver|hammer, saw, nail, screwdriver|January, Monday, March, May"""),
    "observation": _l("""street is wet, but it did not rain last night|shop is closed on a weekday afternoon|plant on the
        windowsill is wilting even though it was watered|car will not start on a cold morning|dog barks every
        evening at the same time|classroom is empty at 10 a.m. on a school day|milk went sour a day before its
        date|lights in the whole street went out at once|bread did not rise this time|train was half empty during
        rush hour"""),
    "claim": _l("""A square is a rectangle.|The product of two odd numbers is even.|If it is raining, the ground is
        wet.|A person who is older than you was born before you.|Adding a positive number makes a number bigger.|
        Every month has at least 30 days.|A triangle can have two right angles.|Heavier objects always sink in
        water.|If all roses are flowers, then all flowers are roses."""),
    "argument": _l("""Everyone at my school likes this band, so it must be the best band in the world.|My uncle smoked
        and lived to 95, so smoking is not harmful.|You cannot prove that ghosts do not exist, so they must exist.|
        If we let students use phones in class, soon nobody will learn anything.|This diet is natural, so it must
        be healthy.|He is not a scientist, so his point about recycling must be wrong.|We have always done it this
        way, so it is the right way."""),
    "riddle": _l("""What has keys but cannot open locks?|What gets wetter the more it dries?|What has hands but cannot
        clap?|What can you catch but not throw?|What has a neck but no head?|What goes up but never comes down?|
        What has many teeth but cannot bite?|What belongs to you, but other people use it more than you do?"""),
    "stem_concept": _l("""gravity|friction|photosynthesis|evaporation|the water cycle|electric current|magnetism|
        inertia|density|sound waves|the greenhouse effect|plate tectonics|DNA|natural selection|the immune system|
        cell division|acids and bases|chemical bonds|the periodic table|energy conservation|black holes|the speed of
        light|the Big Bang|vaccines|antibiotics|the nitrogen cycle|erosion|food chains|ecosystems|the human
        heart|neurons|nuclear fusion|radioactivity|static electricity|buoyancy|air pressure|the Doppler effect|
        semiconductors|algorithms|encryption|the internet|climate feedback loops|osmosis|enzymes|pH|lenses|
        refraction|orbits|tides|biodiversity|fossils|the carbon cycle"""),
    "level": _l("""in simple terms|to a high school student|for a ten-year-old|using an everyday analogy|in three or four
        sentences|as if I had never studied science"""),
    "whyq": _l("""is the sky blue|do we have seasons|does ice float on water|do leaves change color in autumn|does salt
        melt ice on roads|do we see lightning before we hear thunder|does metal feel colder than wood|do onions make
        people cry|is the ocean salty|does bread rise|do cats purr|do stars twinkle|does the Moon change shape|do
        we need sleep|does a spoon look bent in a glass of water|do birds fly south for the winter|do our ears pop
        on airplanes|is Mars red|do bubbles look colorful|does hot air rise|do we get goosebumps|does popcorn pop"""),
    "cause": _l("""tides|earthquakes|rainbows|thunder|the northern lights|rust on iron|the phases of the Moon|ocean waves|
        fog|hiccups|muscle cramps|wind|volcanic eruptions|a solar eclipse|static shocks|echoes|jet lag|allergies"""),
    "stem_pair": _l("""weather and climate|speed and velocity|mass and weight|a virus and a bacterium|an atom and a
        molecule|mitosis and meiosis|AC and DC current|a planet and a star|heat and temperature|a meteor and a
        comet|an element and a compound|renewable and non-renewable energy|an asteroid and a comet|a solid and a
        liquid|an herbivore and a carnivore|a hypothesis and a theory|RAM and storage|analog and digital signals"""),
    "device": _l("""a refrigerator|a microwave oven|a solar panel|GPS|a thermometer|a battery|an electric motor|a
        touch screen|a camera|a wind turbine|a heat pump|a smoke detector|an elevator|noise-cancelling headphones|
        a bicycle gear system|a compass|a hydroelectric dam|a 3D printer|an airplane wing|a fridge magnet"""),
    "few": _l("three|four|five"),
    "stem_examples": _l("""simple machines|chemical changes in everyday life|renewable energy sources|invertebrates|
        good conductors of electricity|insulators|mammals that live in the ocean|planets in our solar system|
        states of matter|forces we feel every day|inventions that changed medicine|animals that hibernate"""),
    "whatif": _l("""the Moon disappeared|Earth stopped spinning|all insects vanished|water did not expand when it
        froze|there was no friction|humans could photosynthesize|the Sun suddenly became twice as bright|Earth had
        no atmosphere|all the ice on Earth melted"""),
    "event_h": _l("""the French Revolution|World War I|the fall of the Western Roman Empire|the Great Depression|the
        American Civil War|the Industrial Revolution|the collapse of the Soviet Union|the Protestant Reformation|the
        end of apartheid in South Africa|the Meiji Restoration|the partition of India|the Black Death|the printing
        revolution in Europe|the Cuban Missile Crisis|the fall of the Berlin Wall|the Age of Exploration"""),
    "thinker": _l("""Confucius|Aristotle|Plato|Immanuel Kant|John Locke|Simone de Beauvoir|Karl Marx|Adam Smith|
        Friedrich Nietzsche|Mary Wollstonecraft|Hannah Arendt|Lao Tzu|Rene Descartes|David Hume|Jean-Jacques
        Rousseau|John Stuart Mill|Epicurus|Marcus Aurelius|Ibn Khaldun|Thomas Hobbes|Baruch Spinoza"""),
    "question": _l("""what makes a life good|whether people are naturally kind|what makes a government fair|whether
        we should always tell the truth|what true friendship is|how to deal with anger"""),
    "movement": _l("""Impressionism|Cubism|Surrealism|the Renaissance|Baroque art|Romanticism|Pop Art|Art Nouveau|
        Expressionism|Minimalism|the Bauhaus|Dada"""),
    "work": _l("""Hamlet by William Shakespeare|Pride and Prejudice by Jane Austen|Nineteen Eighty-Four by George
        Orwell|Don Quixote by Miguel de Cervantes|The Odyssey by Homer|War and Peace by Leo Tolstoy|Things Fall
        Apart by Chinua Achebe|Frankenstein by Mary Shelley|The Divine Comedy by Dante|The Tale of Genji by Murasaki
        Shikibu|Moby-Dick by Herman Melville|Jane Eyre by Charlotte Bronte|The Little Prince by Antoine de
        Saint-Exupery|Crime and Punishment by Fyodor Dostoevsky|To Kill a Mockingbird by Harper Lee"""),
    "hum_concept": _l("""supply and demand|opportunity cost|the social contract|cultural relativism|the separation of
        powers|federalism|utilitarianism|stoicism|existentialism|comparative advantage|urbanization|nationalism|
        cognitive dissonance|confirmation bias|the tragedy of the commons|soft power|civil disobedience|the
        placebo effect|human rights|the rule of law|globalization|the scientific revolution"""),
    "hum_pair": _l("""democracy and monarchy|capitalism and socialism|ancient Athens and Sparta|Greek and Roman
        mythology|Romanticism and Realism in literature|a republic and a direct democracy|Stoicism and Epicureanism|
        Renaissance and medieval art|poetry and prose|weather myths and modern science"""),
    "period": _l("""the Maya civilization|the Ottoman Empire|the Tang dynasty|the Mali Empire|the Viking Age|the Silk
        Road|ancient Egypt|the Inca Empire|the Mughal Empire|the Harlem Renaissance|the Enlightenment|the Byzantine
        Empire|the Aztec capital Tenochtitlan|the Hanseatic League"""),
    "institution": _l(
        "a free press|independent courts|regular elections|political parties|local government|public schools"
    ),
    "tradition": _l("""Diwali|the Lunar New Year|the Day of the Dead in Mexico|Hanukkah|Nowruz|Thanksgiving in the
        United States|Eid al-Fitr|the Mid-Autumn Festival|Holi|Midsummer in Sweden|Carnival in Brazil|Obon in Japan"""),
    "role": _l("""a pirate captain|a medieval knight|a friendly museum guide|a barista in a busy cafe|a teacher at a school
        for wizards|a detective in the 1920s|a robot from the year 3000|a park ranger|a chef at a busy restaurant|the
        commander of a space station|a kindergarten teacher|a football coach|a school librarian|a travel agent|a
        fitness trainer|a customer support agent for an internet company|a wise old owl|a talking cat|a radio news
        reporter|a shopkeeper in a fantasy village|a ship's cook|a zookeeper|a baker in ancient Rome|a game show
        host|a career counselor|a gardener at a royal palace|a mountain guide|a medieval monk who copies books|a
        firefighter|a tired airline pilot|a cheerful weather forecaster|a taxi driver in a big city|a beekeeper"""),
    "rp_task": _l("""Introduce yourself to a new visitor.|Describe a typical day at work.|Give me one piece of advice
        for life.|Tell me about the hardest challenge you have faced.|Welcome me and ask how you can help.|Explain
        the most important rule of your job.|Describe the place where you work.|What do you love most about your
        work?|Tell me about a funny mistake you once made.|What is your favorite time of day, and why?|Teach me one
        skill from your job.|Describe your best friend.|What would you change about your job if you could?"""),
    "job": _l("""a junior web developer|a cafe manager|a museum guide|a summer camp counselor|a bank teller|a science
        teacher|a hotel receptionist|a data analyst|a delivery driver|a graphic designer"""),
    "returned": _l(
        "a pair of shoes that are too small|a toaster that does not work|a sweater with a hole in it|a lamp"
    ),
    "howto": _l("""get a coffee stain out of a white shirt|keep basil alive indoors|boil an egg with a soft yolk|make
        my phone battery last longer|fall asleep faster|start running if I have never run before|save money on
        groceries|pack a suitcase for a week-long trip|clean a cast iron pan|prepare for a job interview|keep my
        houseplants alive while I am on vacation|remember people's names|make a simple monthly budget|unclog a
        sink without chemicals|stop procrastinating|cook rice that is not sticky|organize a small closet|make
        friends in a new city|learn to touch type|get rid of fruit flies in the kitchen|write a good cover letter|
        keep my desk tidy|sharpen a kitchen knife|reduce screen time in the evening|choose a ripe avocado|wash a
        wool sweater|stay focused while working from home|start journaling|fix a squeaky door|plan meals for the
        week|stretch after sitting all day|keep cut flowers fresh longer|introduce a new cat to my dog"""),
    "ideas_for": _l("""a rainy Saturday with kids|a cheap date night|a birthday gift for a dad who likes fishing|a
        healthy breakfast|a team-building activity at work|a small balcony garden|a long car trip|a picnic menu|
        a book club's next meeting|a low-cost hobby|a themed dinner party|a science project for a 12-year-old|
        things to do in winter|a thank-you gift for a teacher|using up leftover rice"""),
    "decide": _l("""buying a used car|choosing a laptop for school|adopting a dog|moving to a new city|joining a gym|
        renting my first apartment|switching careers|buying a bike for commuting|starting a small online shop|
        taking a gap year"""),
    "either": _l("""rent or buy a home|study in the morning or at night|walk or cycle to work|buy a new or a used phone|
        cook at home or eat out|take notes by hand or on a laptop|exercise before or after work|read e-books or
        paper books"""),
    "ingredient": _l("""eggs|rice|spinach|chickpeas|tomatoes|cheese|potatoes|pasta|tofu|mushrooms|lentils|chicken|
        onions|bread|yogurt|carrots|beans|zucchini|peppers|oats"""),
    "interest": _l("food|history|art|hiking|music|architecture|markets|photography|beaches|museums"),
    "days": _l("two|three|four"),
    "problem": _l("""My bread always comes out dense.|My laptop has become very slow.|My tomato plants have yellow leaves.|
        My cat keeps scratching the sofa.|My phone gets hot when I charge it.|My houseplant is dropping its leaves.|
        My rice is always mushy.|My bike chain keeps falling off.|My Wi-Fi is slow in one room.|My shoes smell bad.|
        I wake up tired even after eight hours of sleep.|My sourdough starter smells like vinegar."""),
    "often": _l("""water a cactus|replace my toothbrush|wash my bed sheets|change the oil in my car|back up my computer|
        clean my refrigerator|replace my running shoes|update my phone|descale my kettle"""),
    "city": CITIES,
}
