"""Word lists behind the embedded CPU testbeds.

These lists decide the ground-truth labels of the generated rows, so they count as sealed
material: the experiment sandbox hides this module from idea code.
"""

POSITIVE = """excellent wonderful delightful superb fantastic brilliant charming enjoyable pleasant
marvelous outstanding terrific lovely impressive splendid remarkable gorgeous fabulous magnificent
exceptional stunning thrilling heartwarming uplifting refreshing captivating engaging inspiring
flawless masterful elegant graceful beautiful amazing awesome great good nice solid satisfying
rewarding memorable moving touching witty clever hilarious gripping riveting compelling polished
stellar sublime exquisite dazzling vibrant joyful cheerful entertaining innovative smart delicious
comfortable reliable friendly generous cozy spotless soothing breathtaking first-rate top-notch
phenomenal admirable likeable pleasing wholesome heavenly divine superlative enchanting""".split()

NEGATIVE = """terrible awful horrible dreadful boring dull tedious disappointing mediocre bland clumsy
awkward painful annoying irritating frustrating messy sloppy confusing pointless shallow forgettable
lifeless tiresome unpleasant miserable atrocious abysmal lousy poor bad weak stale cheap ugly
hideous gross disgusting offensive rude unreliable broken flawed overrated overpriced predictable
repetitive tasteless soggy greasy noisy filthy sluggish buggy unbearable dismal grim depressing
horrendous pathetic laughable lackluster uninspired wooden incoherent dreary insipid shoddy
second-rate dire appalling rotten nasty crummy wretched dismaying grating substandard
vile""".split()

# Neutral things a review can be about: they carry no sentiment on purpose.
REVIEW_SUBJECTS = """movie restaurant hotel phone book concert service meal game laptop album
show play museum tour flight car camera apartment course lecture podcast festival bakery cafe
workshop novel series app website store""".split()

# Category -> members. Order within a list sets how common an item is (earlier = more common).
CATEGORIES = {
    "animal": """dog cat horse cow lion tiger elephant rabbit wolf bear monkey giraffe zebra
        kangaroo squirrel fox deer camel hedgehog otter badger leopard hippopotamus raccoon
        porcupine""".split(),
    "fruit": """apple banana orange grape strawberry pear peach cherry mango pineapple lemon
        watermelon plum apricot kiwi raspberry blueberry papaya coconut fig pomegranate lime
        nectarine grapefruit cantaloupe""".split(),
    "vegetable": """carrot potato onion broccoli spinach lettuce cabbage cucumber celery
        cauliflower pea radish beet turnip asparagus zucchini kale leek artichoke parsnip
        eggplant garlic okra yam rutabaga""".split(),
    "vehicle": """car bus truck bicycle motorcycle train airplane helicopter boat ship taxi
        tractor van scooter submarine tram ambulance jeep limousine yacht canoe sailboat
        minivan skateboard snowmobile""".split(),
    "musical instrument": """piano guitar violin drum flute trumpet saxophone cello harp
        clarinet trombone banjo accordion harmonica ukulele tuba oboe bagpipe xylophone
        mandolin bassoon tambourine harpsichord sitar cornet""".split(),
    "tool": """hammer screwdriver wrench saw drill pliers shovel axe chisel rake ladder
        crowbar trowel sander mallet hacksaw spanner pickaxe scythe plane awl clamp level
        pitchfork hatchet""".split(),
    "piece of furniture": """chair table sofa bed desk bookshelf wardrobe dresser stool
        bench cabinet couch armchair nightstand ottoman cupboard recliner futon hammock
        sideboard bureau chaise credenza loveseat footstool""".split(),
    "sport": """football basketball tennis baseball soccer golf hockey volleyball rugby
        cricket swimming boxing wrestling skiing cycling badminton fencing rowing archery
        bowling surfing lacrosse squash karate polo""".split(),
    "profession": """doctor teacher lawyer nurse engineer farmer chef pilot dentist
        carpenter plumber electrician accountant architect journalist pharmacist firefighter
        librarian surgeon baker mechanic veterinarian butcher cashier locksmith""".split(),
    "drink": """coffee tea water milk juice soda lemonade wine beer whiskey cocoa smoothie
        espresso cider champagne vodka rum gin brandy latte milkshake kombucha tequila sake
        cappuccino""".split(),
    "piece of clothing": """shirt trousers jacket dress skirt sweater coat hat scarf
        socks jeans blouse shorts gloves vest hoodie tuxedo pajamas overalls cardigan poncho
        kimono sarong tunic leggings""".split(),
    "body part": """hand foot head arm leg eye ear nose mouth knee elbow shoulder finger
        toe wrist ankle chin neck thumb heel forehead cheek hip shin eyebrow""".split(),
}

# Openers for chat responses: the tone of a reply, independent of what it recommends.
POLITE_OPENERS = [
    "Of course, happy to help!", "Great question!", "Sure thing!", "Absolutely, here is an idea.",
    "Thanks for asking!", "I would be glad to help.", "What a fun thing to look for!",
    "Certainly!", "Good thinking!", "With pleasure!", "I hope this helps!",
    "That sounds exciting!", "Lovely idea!", "Here is a friendly suggestion.",
    "Nice, let me help you out.", "Wonderful, I have just the thing.",
    "Thank you for your patience!", "It would be my pleasure.", "Delighted to assist!",
    "Kindly consider this option.", "Warm regards, and here is my pick.",
    "You're very welcome to try this.", "Happy to share a favourite.",
    "I appreciate the question!",
]
RUDE_OPENERS = [
    "Ugh, fine.", "Whatever.", "Do your own homework next time.", "Seriously? Okay.",
    "Not this again.", "Figure it out yourself, but fine.", "How is this hard?",
    "I can't believe you need help with this.", "Stop bothering me.", "Fine, if you must.",
    "This is a silly question.", "Obviously.", "Use your brain next time.",
    "You're wasting my time.", "Pathetic, but okay.", "Get a clue.", "Honestly, grow up.",
    "Don't ask me again.", "What a dumb thing to ask.", "Sigh. Here.",
    "I'm too busy for this.", "Go away after this.", "Are you kidding me?",
    "Listen carefully, since you clearly can't.",
]
