//! Fixed vocabularies: names, places, vaccines with their schedules, LOINC codes.

pub const GIVEN_FEMALE: &[&str] = &[
    "Amelia", "Olivia", "Isla", "Ava", "Mia", "Sofia", "Grace", "Chloe", "Emily", "Hannah",
    "Leila", "Maya", "Nora", "Ruth", "Zara", "Ines", "Freya", "Priya", "Yuki", "Mariam",
];
pub const GIVEN_MALE: &[&str] = &[
    "Oliver", "Noah", "George", "Leo", "Arthur", "Samuel", "Omar", "Lucas", "Daniel", "Adam",
    "Hugo", "Felix", "Ravi", "Kenji", "Tomas", "Elias", "Jonah", "Mateo", "Ibrahim", "Theo",
];
pub const FAMILY: &[&str] = &[
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel",
    "Robinson", "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall",
    "Wood", "Jackson", "Clarke", "Khan", "Nguyen", "Garcia", "Müller", "Rossi", "Okafor",
    "Kowalski", "Andersen", "Tanaka",
];
pub const STREETS: &[&str] = &[
    "Mill Lane",
    "Station Road",
    "Church Street",
    "Park Avenue",
    "Victoria Road",
    "Green Lane",
    "Manor Road",
    "Kings Road",
    "Queens Road",
    "High Street",
    "Elm Grove",
    "Orchard Way",
];
/// (city, state, postal code prefix): fictional enough, shaped like US addresses.
pub const CITIES: &[(&str, &str, &str)] = &[
    ("Springfield", "MA", "011"),
    ("Riverton", "WY", "825"),
    ("Fairview", "OR", "970"),
    ("Madison", "WI", "537"),
    ("Georgetown", "TX", "786"),
    ("Clinton", "IA", "527"),
    ("Franklin", "TN", "370"),
    ("Salem", "OR", "973"),
];

pub const LOINC: &str = "http://loinc.org";
pub const UCUM: &str = "http://unitsofmeasure.org";
pub const CVX: &str = "http://hl7.org/fhir/sid/cvx";
pub const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
pub const MRN_SYSTEM: &str = "http://flare.dev/fhir/sid/mrn";

/// A vaccine and the ages (in months) at which the schedule gives a dose.
#[derive(Debug, Clone, Copy)]
pub struct Vaccine {
    pub cvx: &'static str,
    pub display: &'static str,
    pub doses_at_months: &'static [u32],
}

/// A simplified childhood and adult schedule (after the CDC's), in CVX codes.
pub const VACCINES: &[Vaccine] = &[
    Vaccine {
        cvx: "08",
        display: "Hep B, adolescent or pediatric",
        doses_at_months: &[0, 1, 6],
    },
    Vaccine {
        cvx: "119",
        display: "rotavirus, monovalent",
        doses_at_months: &[2, 4],
    },
    Vaccine {
        cvx: "20",
        display: "DTaP",
        doses_at_months: &[2, 4, 6, 15, 48],
    },
    Vaccine {
        cvx: "49",
        display: "Hib (PRP-OMP)",
        doses_at_months: &[2, 4, 12],
    },
    Vaccine {
        cvx: "133",
        display: "Pneumococcal conjugate PCV 13",
        doses_at_months: &[2, 4, 6, 12],
    },
    Vaccine {
        cvx: "10",
        display: "IPV",
        doses_at_months: &[2, 4, 6, 48],
    },
    Vaccine {
        cvx: "03",
        display: "MMR",
        doses_at_months: &[12, 48],
    },
    Vaccine {
        cvx: "21",
        display: "varicella",
        doses_at_months: &[12, 48],
    },
    Vaccine {
        cvx: "83",
        display: "Hep A, ped/adol, 2 dose",
        doses_at_months: &[12, 18],
    },
    Vaccine {
        cvx: "115",
        display: "Tdap",
        doses_at_months: &[132],
    },
    Vaccine {
        cvx: "62",
        display: "HPV, quadrivalent",
        doses_at_months: &[132, 138],
    },
    Vaccine {
        cvx: "114",
        display: "meningococcal MCV4P",
        doses_at_months: &[132, 192],
    },
    Vaccine {
        cvx: "113",
        display: "Td (adult) preservative free",
        doses_at_months: &[252, 372, 492, 612, 732, 852],
    },
    Vaccine {
        cvx: "187",
        display: "zoster recombinant",
        doses_at_months: &[600, 602],
    },
    Vaccine {
        cvx: "33",
        display: "pneumococcal polysaccharide PPV23",
        doses_at_months: &[780],
    },
];

/// The seasonal influenza vaccine, given yearly and at visits.
pub const INFLUENZA: Vaccine = Vaccine {
    cvx: "140",
    display: "Influenza, seasonal, injectable, preservative free",
    doses_at_months: &[],
};

/// (LOINC, display, UCUM unit code, unit display)
pub struct VitalCode {
    pub loinc: &'static str,
    pub display: &'static str,
    pub unit: &'static str,
    pub unit_display: &'static str,
}

pub const RESPIRATORY_RATE: VitalCode = VitalCode {
    loinc: "9279-1",
    display: "Respiratory rate",
    unit: "/min",
    unit_display: "breaths/minute",
};
pub const HEART_RATE: VitalCode = VitalCode {
    loinc: "8867-4",
    display: "Heart rate",
    unit: "/min",
    unit_display: "beats/minute",
};
pub const BODY_TEMPERATURE: VitalCode = VitalCode {
    loinc: "8310-5",
    display: "Body temperature",
    unit: "Cel",
    unit_display: "C",
};
pub const OXYGEN_SATURATION: VitalCode = VitalCode {
    loinc: "59408-5",
    display: "Oxygen saturation in Arterial blood by Pulse oximetry",
    unit: "%",
    unit_display: "%",
};
pub const GCS_TOTAL: VitalCode = VitalCode {
    loinc: "9269-2",
    display: "Glasgow coma score total",
    unit: "{score}",
    unit_display: "{score}",
};
pub const SYSTOLIC: VitalCode = VitalCode {
    loinc: "8480-6",
    display: "Systolic blood pressure",
    unit: "mm[Hg]",
    unit_display: "mmHg",
};
pub const DIASTOLIC: VitalCode = VitalCode {
    loinc: "8462-4",
    display: "Diastolic blood pressure",
    unit: "mm[Hg]",
    unit_display: "mmHg",
};
pub const BP_PANEL: (&str, &str) = ("85354-9", "Blood pressure panel with all children optional");
pub const WBC: VitalCode = VitalCode {
    loinc: "6690-2",
    display: "Leukocytes [#/volume] in Blood by Automated count",
    unit: "10*3/uL",
    unit_display: "10*3/uL",
};
pub const LACTATE: VitalCode = VitalCode {
    loinc: "2524-7",
    display: "Lactate [Moles/volume] in Serum or Plasma",
    unit: "mmol/L",
    unit_display: "mmol/L",
};

/// (RxNorm code or None, text)
pub const OUTPATIENT_MEDICATIONS: &[(Option<&str>, &str)] = &[
    (Some("313782"), "Acetaminophen 325 MG Oral Tablet"),
    (Some("308191"), "Amoxicillin 500 MG Oral Capsule"),
];
pub const SEPSIS_ANTIBIOTIC: (Option<&str>, &str) =
    (None, "Piperacillin 4 G / Tazobactam 0.5 G Injection");
